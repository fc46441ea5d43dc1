"""One router per resource: classify, search, images, embed, categories, health."""
