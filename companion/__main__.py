"""python -m companion doctor"""
import sys

from .doctor import main

sys.exit(main())
