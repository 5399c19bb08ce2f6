"""The iap command line, from user verbs down to the hidden worker."""
