"""Fine-tuning adapters: PEFT glue and methods PEFT lacks (one folder or file per method)."""
