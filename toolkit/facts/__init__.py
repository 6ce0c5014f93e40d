"""What is true of the machine and the model before anything loads: devices and their free memory, this process's memory, and a model's architecture and size from its metadata."""
