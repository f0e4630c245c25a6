"""Methods, each a subpackage implementing the one interface in ``methods.base``."""
