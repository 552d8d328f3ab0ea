"""The script-side contract shipped in the training images (stdlib only): what a training
script reads and writes.
"""
