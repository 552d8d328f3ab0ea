"""Pure decisions and data: configuration, detection rules, search spaces, verdicts, promotion
tests, reports, email and plot rendering. Imports nothing that does I/O beyond reading what
it is given.
"""
