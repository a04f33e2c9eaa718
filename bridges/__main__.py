import sys

from bridges.cli import main

sys.exit(main())
