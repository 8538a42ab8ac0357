"""Programs that tests start in other processes (under ``torch.distributed.run``), not tests themselves."""
