"""The waypoint controller: the only code that talks to a Kubernetes API server.

``apiclient`` is the Kubernetes API client (a narrow layer over the official one);
``reconcile`` turns one Gateway into applied objects and status; ``queue``, ``informer``,
``leader`` and ``manager`` make that a robust, running controller, which ``main`` starts
(``waypoint controller``); ``xds`` adds live config over ADS (``--xds-listen``).
"""
