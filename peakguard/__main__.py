import sys

from peakguard.cli import main

sys.exit(main())
