"""The console's screens: overview, run, reviews, history, analytics, and the dialogs."""
