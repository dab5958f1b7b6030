"""Small shared helpers: errors, safe unpickling, checkpoint I/O, distributed set-up."""
