"""End-to-end main jobs on embedded data: the digits generation demo (`digits`, the main job) and the photo tokenizer
demo (`photos`), with their data, the digit classifier that scores samples, and PNG charts (`plots`)."""
