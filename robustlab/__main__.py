import sys

from robustlab.app.cli import main

sys.exit(main())
