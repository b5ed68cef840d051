"""The synthetic FPR source API that the Fivetran connector reads (`finmatch source-api`)."""
