import sys

from mixbatch.cli import main

sys.exit(main())
