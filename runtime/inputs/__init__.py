"""Input conversion and preprocessing: images, texts, instructions, the decode/feed pipeline and
modality routing — the one implementation that training calls too. Imports errors and artifact only.
"""
