import sys

from featherflow.cli import main

sys.exit(main())
