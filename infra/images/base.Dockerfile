# A Debian bookworm base with Python 3.11, from Debian packages only: the root filesystem
# that infra/images/build.sh makes with debootstrap (python3.11, ca-certificates, tzdata).
# It stands in for python:3.11-slim-bookworm where no registry can be reached; its
# interpreter is /usr/bin/python3.11 (the services' venvs point at it).
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8
CMD ["python3.11"]
