import sys

from featherflow.cli.main import main

sys.exit(main())
