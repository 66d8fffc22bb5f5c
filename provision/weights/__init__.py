"""Model weights: the lockfile that pins them (lockfile.py) and the commands around the weights role."""
