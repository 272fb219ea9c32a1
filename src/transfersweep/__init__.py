"""transfersweep."""
