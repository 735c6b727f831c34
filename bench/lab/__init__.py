"""The lab every benchmark runs in: ports, processes, databases, nginx, authproxy daemons,
load generators. speed.py imports processes and install before it may pip-install the
third-party packages the other modules import, so those two use the standard library only.
"""
