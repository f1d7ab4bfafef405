import sys

from metricstore.cli import main

sys.exit(main())
