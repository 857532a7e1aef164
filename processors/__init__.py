"""Pure journey logic over batches of validated events: no I/O, no Faust, no clock."""
