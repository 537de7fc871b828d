import sys

from edge.camera.cli import main

sys.exit(main())
