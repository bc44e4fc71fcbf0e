let cart
