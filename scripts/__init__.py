"""UM-ProtoShare MONAI bundle: custom components named by the configs."""
