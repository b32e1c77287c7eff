"""The char-RNN itself: the recurrent cells karnna knows, one registry entry each (cells),
the embedding -> recurrent layers -> softmax network with its explicit hidden state (charrnn), and
the weights-only checkpoint that carries it with its config and vocabulary (checkpoint).
"""
