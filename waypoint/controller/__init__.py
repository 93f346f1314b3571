"""The waypoint controller: the only code that talks to a Kubernetes API server.

``cluster`` wraps the official client; ``reconcile`` turns one Gateway into applied objects
and status; ``queue``, ``informer``, ``leader`` and ``manager`` make that a robust, running
controller (``waypoint controller``); ``xds`` adds live config over ADS (``--xds-listen``).
"""
