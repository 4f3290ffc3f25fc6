"""Files the project writes and reads back: atomic writes, locked run folders, and what may run code."""
