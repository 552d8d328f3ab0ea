"""Keeping training containers alive: the restart policy and the claim, following one trial
(the Docker executor's) and the watchdog over all of them.
"""
