"""Small helpers every layer may use: files written atomically, finiteness checks, logging set-up."""
