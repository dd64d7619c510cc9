"""What people read: the report and its plots, and the progress bars."""
