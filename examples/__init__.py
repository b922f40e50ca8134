"""Small example programs, used by the documentation and the command-line tests."""
