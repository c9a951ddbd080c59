"""The dashboard on the [http] listener: server-rendered pages from the same read functions the
command line uses, the explain timeline drawn as SVG, and a few actions as POST forms."""
