# locust's image plus what the Kerve users need to build their payloads (real photos
# bundled with scikit-image and scikit-learn).
FROM locustio/locust:2.31.8
RUN pip install --no-cache-dir "scikit-image>=0.22" "scikit-learn>=1.4" "numpy>=1.26" "pillow>=10"
COPY --chown=locust loadtest /home/locust/loadtest
