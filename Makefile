# transfersweep: `make` lists the targets. Override variables on the command line:
#   make sweep TARGET=/data/mine [SOURCE=/data/big] [BACKBONE=lite0|<preset>|<any timm name>]
#   make train BACKBONE=convnext_atto ARGS="regime=joint freeze=last_blocks freeze.n_blocks=2"
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Your images: TARGET=<folder of class folders> (SOURCE=<a larger related set>, optional).
# Without TARGET the embedded task DATA runs (digits: from-scratch resnet18; mnist: lite0).
TARGET ?=
SOURCE ?=
BACKBONE ?= $(if $(TARGET),lite0,resnet18)
DATA ?= digits
ARGS ?=
STUDY ?=
# A preset of conf/backbone (lite0: ImageNet weights from an installed package), or any timm
# name: then with timm's hub weights (backbone=timm, pretrained=true).
BACKBONE_ARGS = $(if $(wildcard conf/backbone/$(BACKBONE).yaml),backbone=$(BACKBONE),backbone=timm backbone.name=$(BACKBONE))
# make sweep BACKBONES=lite0,resnet18: the backbone searched too (presets or timm names), ranked
# before training; KEEP=1 trains only the best-ranked one (search.prerank.keep)
BACKBONES ?=
KEEP ?=
comma := ,
SWEEP_BACKBONE_ARGS = $(if $(BACKBONES),'search.backbones=[$(BACKBONES)]' $(if $(KEEP),search.prerank.keep=$(KEEP)),$(BACKBONE_ARGS))
DATA_ARGS = $(if $(TARGET),data=imagefolder data.target.root=$(abspath $(TARGET)) $(if $(SOURCE),data.source.root=$(abspath $(SOURCE))),data=$(DATA))
# The study (and the registered model) is named after what it is about: <target folder or DATA>-<BACKBONE>
NAME = $(if $(TARGET),$(notdir $(abspath $(TARGET))),$(DATA))-$(if $(BACKBONES),$(subst $(comma),+,$(BACKBONES)),$(BACKBONE))
SWEEP_STUDY = $(or $(STUDY),$(NAME))
RESUME_CHANGED ?=
# make sweep: 6 search trials over 2 paired repeats each, then the top 2 paradigms confirmed on
# 4 fresh repeats (about 15 minutes on 2 CPU cores; fewer trials with repeats beat many
# single-seed ones). Target stages fixed at 20 epochs: the space's 40 doubles joint regimes.
TRIALS ?= 6
REPEATS ?= 2
CONFIRM ?= 2
CONFIRM_REPEATS ?= 4
JOBS ?= 1
# TIME=30m: a wall-clock budget for the whole search (no trial starts that would not end in it)
TIME ?=
# JOBS>1: that many trials at once in joblib worker processes (cores shared between them)
PARALLEL = $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) hydra.sweeper.n_jobs=$(JOBS))
MODEL ?= models:/$(SWEEP_STUDY)@champion
IMAGES ?= $(TARGET)
HOST ?= 127.0.0.1
PORT ?= 5000
OUTPUTS ?= outputs
# make server: database of the MLflow tracking server (PostgreSQL by URL) and its artifact folder
BACKEND ?= sqlite:///$(OUTPUTS)/server/mlflow.db
ARTIFACTS ?= $(OUTPUTS)/server/artifacts
# make server: auto = MLflow basic auth unless HOST is loopback (admin password from the
# environment, MLFLOW_AUTH_ADMIN_PASSWORD, or AUTH_CONFIG=<ini outside the repo>); none = off
AUTH ?= auto
AUTH_CONFIG ?=

.DEFAULT_GOAL := help
.PHONY: help install check-venv train sweep grid predict ui dashboard server test test-fast bench lint format clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-9s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: TARGET=<folder> SOURCE=<folder> BACKBONE=$(BACKBONE) BACKBONES=<a,b> KEEP=<k> DATA=$(DATA) STUDY=<name> TRIALS=$(TRIALS) TIME=<30m> REPEATS=$(REPEATS) CONFIRM=$(CONFIRM) CONFIRM_REPEATS=$(CONFIRM_REPEATS) JOBS=$(JOBS) MODEL=$(MODEL) IMAGES=<folder> ARGS='<overrides>' HOST=$(HOST) PORT=$(PORT) BACKEND=<db url>"

install: $(VENV)/.installed ## create .venv with everything (reuses a healthy one)

# Re-runs when pyproject.toml changes or the venv no longer imports the stack.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	$(PY) -c "import transfersweep.train, torch, torchvision, timm, mlflow, optuna, hydra_plugins.hydra_optuna_sweeper"
	@touch $@
	@echo "installed: run 'make train' (or $(PY) -m transfersweep.train --help)"

check-venv:
	@$(PY) -c "import transfersweep.train, torch, timm, mlflow" 2>/dev/null || { rm -f $(VENV)/.installed; $(MAKE) --no-print-directory install; }

train: install check-venv ## one run of the default paradigm (TARGET=<folder> alone: regime=target_only)
	$(PY) -m transfersweep.train $(BACKBONE_ARGS) $(DATA_ARGS) \
		$(if $(and $(TARGET),$(if $(SOURCE),,1)),regime=target_only) $(ARGS)

sweep: install check-venv ## search, confirmation, verdict, champion on TARGET=<folder> or DATA (STUDY=name resumes)
	$(PY) -m transfersweep.train -m sweep=paradigm $(SWEEP_BACKBONE_ARGS) $(DATA_ARGS) \
		hydra.sweeper.n_trials=$(TRIALS) trainer.repeats=$(REPEATS) trainer.target_epochs=20 \
		hydra.sweeper.confirm.top_k=$(CONFIRM) hydra.sweeper.confirm.repeats=$(CONFIRM_REPEATS) $(PARALLEL) \
		hydra.sweeper.study_name=$(SWEEP_STUDY) $(if $(RESUME_CHANGED),hydra.sweeper.resume_changed=true) \
		$(if $(TIME),hydra.sweeper.time_budget=$(TIME)) $(ARGS)

grid: install check-venv ## every regime x freeze cell once (REPEATS=5 for mean, CI and a verdict)
	$(PY) -m transfersweep.train -m sweep=grid $(SWEEP_BACKBONE_ARGS) $(DATA_ARGS) \
		trainer.repeats=$(REPEATS) $(PARALLEL) hydra.sweeper.study_name=$(or $(STUDY),grid-$(NAME)) \
		$(if $(RESUME_CHANGED),hydra.sweeper.resume_changed=true) $(ARGS)

predict: install check-venv ## predictions.csv for IMAGES=<folder|file> with MODEL=<models:/name@champion|runs:/id|folder>
	$(PY) -m transfersweep.predict model="$(MODEL)" images="$(IMAGES)" $(ARGS)

# make ui serves the local store through transfersweep.server (what `mlflow ui` runs, plus its
# password rule: off loopback it asks for one, as make server does; user db under outputs/ui/).
ui: install ## MLflow UI on the default store (outputs/mlflow.db), bound to HOST=127.0.0.1
	@echo "runs: http://$(HOST):$(PORT)/#/experiments/1/runs?workflowType=machine_learning"
	$(PY) -m transfersweep.server --backend sqlite:///$(abspath $(OUTPUTS))/mlflow.db \
		--artifacts "$(abspath $(OUTPUTS))/ui/artifacts" --host "$(HOST)" --port "$(PORT)" --workers 1 \
		--auth "$(AUTH)" $(if $(AUTH_CONFIG),--auth-config "$(AUTH_CONFIG)")

# make dashboard: the Optuna study storage to show, and its own port (8080 unless PORT= is
# given on the command line), so it runs beside make ui on 5000.
STORAGE ?= sqlite:///$(abspath $(OUTPUTS))/optuna.db
DASHBOARD_PORT = $(if $(filter command line environment,$(origin PORT)),$(PORT),8080)

dashboard: install ## optuna-dashboard on the live studies (STORAGE=outputs/optuna.db), HOST=127.0.0.1 PORT=8080
	@echo "studies: http://$(HOST):$(DASHBOARD_PORT)/dashboard/"
	$(VENV)/bin/optuna-dashboard "$(STORAGE)" --host $(HOST) --port $(DASHBOARD_PORT) --quiet

server: install ## MLflow tracking server for many workers: BACKEND=postgresql://user@host/db, HOST=127.0.0.1
	$(PY) -m transfersweep.server --backend "$(BACKEND)" --artifacts "$(ARTIFACTS)" --host "$(HOST)" --port "$(PORT)" \
		--auth "$(AUTH)" $(if $(AUTH_CONFIG),--auth-config "$(AUTH_CONFIG)")

test: install check-venv ## the full test suite (CPU, 14-23 minutes; what CI runs)
	$(PY) -m pytest -q

test-fast: install check-venv ## every module, without the slow tests (about 4 minutes): while iterating
	$(PY) -m pytest -q -m "not slow"

bench: install check-venv ## benchmarks: ratios against plain PyTorch, measured in one run (about 25 minutes on 2 CPU cores)
	$(PY) bench/run.py $(ARGS)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: install ## ruff fix + format
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

clean: ## remove everything under outputs/ (runs, MLflow stores, studies, caches, resume states) and tool caches; keeps .venv
	find $(OUTPUTS) -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
