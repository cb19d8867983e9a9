"""Data libraries: essays split for training and haystacks, needles and their banks, training examples, the haystack stream."""
