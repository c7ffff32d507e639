"""Developer scripts: the demo and the checks of the local servers."""
