"""``python -m otel_batchmon`` runs the command line."""

import sys

from otel_batchmon.cli import main

sys.exit(main())
