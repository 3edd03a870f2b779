"""``python -m nnunet_ssl.cli ...``: the same as the ``nnunet_ssl`` command."""
import sys

from nnunet_ssl.cli.main import main

sys.exit(main())
