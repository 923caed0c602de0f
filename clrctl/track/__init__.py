"""What watches a run: CSV rows, TensorBoard, progress on the terminal."""
