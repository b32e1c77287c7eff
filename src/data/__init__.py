"""From text to the arrays training reads: finding, fetching and cleaning the corpus
(corpus), the character vocabulary and its stable order (vocab), the train | val | test cut
(splits) and the batch layout with the hidden state carried between windows (batches).
"""
