"""The top layer: the ``nst`` command, the demo and the local stack they start."""
