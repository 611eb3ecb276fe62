"""The synthetic scene world: scenes, their images and texts, edits with targets and distractors, datasets."""
