"""The application: the ``robustlab`` command line, configs, run directories
and one module per command (attack, train, evaluate, study, dag, demo).

Library packages never import this package."""
