import sys

from edge.meter.cli import main

sys.exit(main())
