"""Workers: `JobProcessor` (claims and runs jobs), the executor, and maintenance loops."""
