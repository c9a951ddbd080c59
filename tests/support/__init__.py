"""What the tests share besides fixtures (those live in conftest.py): fake services, waiting, the
daemon in this process (`inprocess`) or as a real process (`processes`), the command line in this
process (`cli`), and readers of a daemon's state files (`project`)."""
