"""constrain"""
