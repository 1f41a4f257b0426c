"""Pure domain: job states, validated specs and retry arithmetic. Imports nothing of ours."""
