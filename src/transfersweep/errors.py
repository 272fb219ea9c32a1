"""User-facing errors: raised before or during a run, printed without a traceback."""


def first_line(e: BaseException, default: str = "") -> str:
    """The first line of an exception's message (or `default` when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else default


class TransferSweepError(Exception):
    """Base class: something the user can fix (config, data, weights)."""


class ConfigError(TransferSweepError):
    """A config value is invalid or cannot apply (names the key and the fix)."""


class DataError(TransferSweepError):
    """A data set is missing, empty or cannot provide what the config asks for."""


class WeightsError(TransferSweepError):
    """Weights cannot be fetched or do not fit the backbone."""


class TrainingError(TransferSweepError):
    """Training diverged (non-finite loss) or ran out of memory."""
