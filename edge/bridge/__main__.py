import sys

from edge.bridge.cli import main

sys.exit(main())
